"""Stage 4, serve: talk to what was trained or exported (chat) and measure it (evaluate).
Imports core and every stage before it."""
