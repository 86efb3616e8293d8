import asyncio, sys
from polybook_client import Client
api = Client(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080")
tokens = [m["tokens"][0] for m in api.markets(limit=3)]
print(asyncio.run(api.live(tokens).run(seconds=5)))
