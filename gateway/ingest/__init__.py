"""Mail in: the doors (SMTP, files, IMAP), parsing, decisions and their application."""
