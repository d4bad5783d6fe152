"""The `flashxlstm` command line."""
