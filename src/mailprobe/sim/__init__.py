"""A simulated mail world on loopback: SMTP servers (and later DNS) for tests and demos."""
