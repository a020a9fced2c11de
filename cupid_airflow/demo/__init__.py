"""The local demo: seed tables with planted mismatches, a callback receiver, and a check of what arrived."""
