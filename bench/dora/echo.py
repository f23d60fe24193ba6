"""dora-rs pass-through node: sends every input straight back."""
from dora import Node

node = Node()
for event in node:
    if event["type"] == "INPUT":
        node.send_output("out", event["value"], event["metadata"])
