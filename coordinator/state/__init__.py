"""The durable state store (SQLite or PostgreSQL): versioned schema, jobs, cuts, plans, slices, live progress."""
