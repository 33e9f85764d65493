"""``sanawm serve``: steer live sessions from a browser (aiohttp; HTTP + one WebSocket per session).

Modules: ``protocol`` (message schema, frame packing), ``manager`` (slots, limits, snapshots, idle reaping),
``stream`` (generation and display loops), ``player`` (what is shown each tick, preview camera),
``reproject`` (timewarp homographies), ``images`` (scenes, uploads, JPEG), ``app`` (routes), ``cli``.
Importing this package imports nothing heavy; aiohttp loads with ``app``.
"""
