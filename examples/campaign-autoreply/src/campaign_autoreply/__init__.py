"""Reference campaign service: answers each customer mail routed to one campaign exactly once."""
