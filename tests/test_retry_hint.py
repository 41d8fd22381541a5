"""The retry hint parser over real greylisting wordings, each with its public source."""

from __future__ import annotations

import pytest

from mailprobe.retry_hint import MAX_HINT, MIN_HINT, retry_hint


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # milter-greylist's default (github:ryoqun/milter-greylist:milter-greylist.c,
        # log_and_report_greylisting: "please come back in %02d:%02d:%02d")
        ("4.7.1 Greylisting in action, please come back in 00:04:59", 299.0),
        ("4.7.1 Greylisting in action, please come back in 01:00:00", 3600.0),
        # mongrey (github:srault95/mongrey:mongrey/policy.py)
        ("4.2.0 Greylisted for 300 seconds. policy[default] - http://x#greylisted", 300.0),
        # postgrey --greylist-text='Greylisted for %s seconds' (%s: seconds left,
        # github:schweikert/postgrey:postgrey), as configured by many deployments
        ("4.2.0 <user@example.com>: Recipient address rejected: Greylisted for 45 seconds", 45.0),
        # https://www.simplefastwebsites.com/errors/email/smtp-451-4-7-1-greylisting-try-again-later/
        (
            "4.7.1 <u@example.com>: Recipient address rejected: "
            "Greylisted, try again in 300 seconds",
            300.0,
        ),
        # https://ac.roguewd.com/index.php?rp=/knowledgebase/126/451-Greylisted-please-try-again-in-900-seconds.html
        ("Greylisted, please try again in 900 seconds", 900.0),
        # https://hoststud.com/resources/email-error-450-and-it%E2%80%99s-solution.317/updates
        ("4.7.1 <r@example.com>: Recipient address rejected: Greylisted for 5 minutes", 300.0),
        ("4.7.1 <r@example.com>: Client host rejected: Greylisted for 5 minutes", 300.0),
        # https://stwalkerster.co.uk/support/greylisted/
        ("Greylisted, see or wait 300 seconds", 300.0),  # the help URL elided on the page
        # https://github.com/mailcow/mailcow-dockerized/issues/4443
        (
            "Recipient address rejected: Greylisting in action, please come back in 180 seconds",
            180.0,
        ),
        # http://www.exchangefreaks.com/Grey-list-t128141.html (lower case, trailing dots)
        ("Recipient address rejected greylisted for 300 seconds.....", 300.0),
        # the forms the issue names, with abbreviations Postfix/Exim users write
        ("retry after 5 minutes", 300.0),
        ("try again in 2 hours", 7200.0),
        ("try again in 45s", 45.0),
        ("try again in 1.5 min", 90.0),
        ("Greylisted for 30 secs", 30.0),
    ],
)
def test_a_real_wording_gives_its_wait(text: str, seconds: float) -> None:
    assert retry_hint(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        # postgrey's default text (github:schweikert/postgrey:postgrey)
        "4.2.0 <u@aful.org>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/aful.org.html",
        # rspamd's default greylist message (github:helpscout/chef-rspamd:attributes/greylist.rb)
        "4.7.1 Try again later",
        # milter-greylist's quiet mode (github:ryoqun/milter-greylist:milter-greylist.c)
        "4.7.1 Greylisting in action, please come back later",
        # https://www.spam-mail-blocker.de/greylisted.html: a placeholder, no number
        "4.2.0 Sender address rejected: Greylisted for XX sec.",
        # stalwart: github:stalwartlabs/mail-server,
        # resources/config/spamfilter/scripts/greylist.sieve
        "4.2.2 Greylisted, please try again in a few moments.",
        # numbers that are not waits: codes, addresses, a count
        "4.7.1 192.0.2.1 is not yet authorized to deliver mail from <a@b.example>",
        "4.5.3 Too many recipients for 5 mailboxes",
        "",
    ],
)
def test_no_hint_when_the_reply_gives_none(text: str) -> None:
    assert retry_hint(text) is None


def test_a_hint_is_bounded() -> None:
    assert retry_hint("please come back in 00:00:00") == MIN_HINT
    assert retry_hint("Greylisted for 0 seconds") == MIN_HINT
    assert retry_hint("try again in 900 hours") == MAX_HINT
