"""The program's faces: the command line, the HTTP server and what they show."""
