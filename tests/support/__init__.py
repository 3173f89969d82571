"""Test-support code shared by several test packages (not tests themselves)."""
