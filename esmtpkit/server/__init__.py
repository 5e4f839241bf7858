"""
The server plumbing: the factory, the service, twistd options, worker
processes, endpoints, timers and the reply writer.
"""
