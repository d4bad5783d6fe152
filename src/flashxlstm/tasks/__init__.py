"""Synthetic tasks from the xLSTM paper: formal languages and multi-query associative recall."""
