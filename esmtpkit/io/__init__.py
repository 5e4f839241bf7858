"""
The output side of a connection, for every wire: the reply writer and the
batch that writes the replies of a reactor turn together.
"""
