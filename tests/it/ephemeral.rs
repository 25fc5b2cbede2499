//! Integration tests: ephemeral (filled in area by area).
