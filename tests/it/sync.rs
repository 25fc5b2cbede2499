//! Integration tests: sync (filled in area by area).
