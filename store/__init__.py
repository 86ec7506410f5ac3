"""The ticket store: SQLModel models, the database, the blob store and the ticket rules."""
