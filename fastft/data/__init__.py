"""Stage 1, data: a JSONL file of conversations -> validated examples (read), rendered through
the chat-template guard with an assistant-only loss mask (template, tools), checked and
previewed for the user (check, preview). Imports only core."""
