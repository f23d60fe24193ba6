"""A node that takes seconds to start, as a model does while it loads, then passes audio on."""

import time

from remotemedia import Node, register


@register
class SlowStart(Node):
    """Passes audio through after a slow start."""

    inputs = ["audio"]
    outputs = {"out": ["audio"]}

    def setup(self, params):
        time.sleep(params.get("seconds", 1.5))

    async def process(self, data):
        yield data
