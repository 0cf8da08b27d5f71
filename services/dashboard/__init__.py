"""The live dashboard (issue 17): a page served by emomon that shows each session's speakers.

- :mod:`.hub` - what the page shows (recent events, trends, alerts per speaker) and the fan-out
  of updates to every open page;
- :mod:`.server` - the aiohttp app: the page, its static files, ``/api/state`` and the
  Server-Sent Events stream ``/api/stream``;
- :mod:`.feeds` - where the hub's updates come from besides the embedded pipeline: MQTT topics
  (distributed mode) and JSONL files.
"""
