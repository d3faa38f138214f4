"""A Danbooru-compatible read API (``/posts.json`` and friends) over Sagashi's search."""
