"""Launchers for the homeservers the interop suites run against (Synapse and ieum).

Each launcher owns one server process on 127.0.0.1: its config, data directory,
log file, start-up wait and shutdown. The launchers know nothing about pytest so
other suites (e.g. federation) can reuse them.
"""
