"""The demo: a seeded industrial park with 200+ rooms, virtual meters on every transport, an accelerated clock.

``powergate demo`` (``powergate.cli.demo``) runs it all in one process; ``docs/demo.md`` is the walk-through.
Modules: ``clock`` (demo time), ``seed`` (organisation, sites, tariffs, rooms, accounts, users), ``meters`` (the
virtual fleets matched to the seeded meters), ``broker`` (an embedded Mosquitto), ``inbox`` (where the demo's
notifications are delivered), ``runner`` (the composition root).
"""
