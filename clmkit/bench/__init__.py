"""Speed and accuracy runners, tables and plots."""
