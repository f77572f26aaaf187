"""A tiny Functions app used only to test the development host and the indexing helper."""
