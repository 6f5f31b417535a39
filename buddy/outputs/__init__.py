"""The campaign's output folder: every file name and every write."""
