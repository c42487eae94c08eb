"""The pure DDP core: messages, EJSON, ids, SockJS framing, heartbeats and the mergebox.

Nothing in this package does I/O, blocks, sleeps, reads the clock, logs or imports
gevent or Django. Time is passed in as an argument. Everything here is testable without
a socket, in the way h11 and wsproto are.
"""
