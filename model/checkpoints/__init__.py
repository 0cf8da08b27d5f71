"""emomon."""
