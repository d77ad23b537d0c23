"""What every app's REST API shares: pagination, id filters, permissions, upload limits,
and the route table under /api/v1/."""
