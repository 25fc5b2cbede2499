//! Integration tests: rooms (filled in area by area).
