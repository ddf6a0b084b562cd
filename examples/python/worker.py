"""A worker that follows task events and resumes where it stopped, even after a restart."""

import asyncio
import os

from realtime_client import FilePositionStore, RealtimeClient


async def main() -> None:
    position = FilePositionStore(os.environ.get("POSITION_FILE", "worker.position"))
    async with RealtimeClient(os.environ["REALTIME_URL"], os.environ["REALTIME_TOKEN"], position=position) as client:
        async for event in client:
            if event["type"] == "resync":  # the position is older than the kept history
                print("resync: refetch your state over REST", flush=True)
            else:
                print(event["id"], event["type"], event.get("n", ""), flush=True)


asyncio.run(main())
