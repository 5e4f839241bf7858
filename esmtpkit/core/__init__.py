"""
The conversation that knows no wire: handler and session, the hook runner,
transaction rules, the content pipeline, and server events.
"""
