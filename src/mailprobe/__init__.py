"""mailprobe: does this address exist? Ask the domain's own mail server, never send mail."""

from mailprobe.smtp import aprobe_rcpt, probe_rcpt

__all__ = ["aprobe_rcpt", "probe_rcpt"]
__version__ = "0.1.0"
