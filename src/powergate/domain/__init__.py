"""Pure rules: money, energy, tariffs, rating, ledger, calendars. No I/O, no clock, no framework."""
