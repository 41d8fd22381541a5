"""A simulated mail world on loopback, for tests and demos (as aiosmtpd ships aiosmtpd.testing).

Needs the `testing` extra (dnslib for the DNS server; trustme for the tests' TLS):
`pip install 'mailprobe[testing]'`. Nothing in mailprobe's own commands imports
this package, except `mailprobe demo`.

* `smtpd`: a scriptable SMTP server (`SimSMTPServer`, its `MXBehavior`) that
  records every command and the caps a prober broke; never accepts DATA;
* `dnsd`: an authoritative DNS server for a zone of `DomainSpec`s (UDP and TCP);
* `world`: `SimWorld`, hundreds of MX hosts on 127.x addresses with the DNS and
  the ground truth, built from `worldconfig`, `replies` (texts from the corpus of
  real replies, `corpus`), `generate`, `truth` and `stats`; `demo_world` for
  `mailprobe demo`;
* `background`: serving any of them from a background thread (`with server:`).
"""

from mailprobe.testing.corpus import CORPUS_FILE, SOURCES_FILE, CorpusReply, load_corpus
from mailprobe.testing.dnsd import DomainSpec, SimDNSServer
from mailprobe.testing.records import ServerRecord
from mailprobe.testing.replies import FAMILY_REPLIES, ReplyFamily, reply_families
from mailprobe.testing.smtpd import (
    ACCEPT,
    MXBehavior,
    Scripted,
    SessionState,
    SimSMTPServer,
    serve_in_thread,
)
from mailprobe.testing.stats import WorldStats
from mailprobe.testing.truth import AddressTruth, DomainTruth, GroundTruth
from mailprobe.testing.world import DEMO_LAYOUT, SimWorld, demo_world
from mailprobe.testing.worldconfig import DNSStatus, Kind, Mailbox, WorldConfig

__all__ = [
    "ACCEPT",
    "CORPUS_FILE",
    "DEMO_LAYOUT",
    "FAMILY_REPLIES",
    "SOURCES_FILE",
    "AddressTruth",
    "CorpusReply",
    "DNSStatus",
    "DomainSpec",
    "DomainTruth",
    "GroundTruth",
    "Kind",
    "MXBehavior",
    "Mailbox",
    "ReplyFamily",
    "Scripted",
    "ServerRecord",
    "SessionState",
    "SimDNSServer",
    "SimSMTPServer",
    "SimWorld",
    "WorldConfig",
    "WorldStats",
    "demo_world",
    "load_corpus",
    "reply_families",
    "serve_in_thread",
]
