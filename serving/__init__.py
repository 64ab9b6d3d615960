"""The serving layer: the BentoML service (`serving.service`), its gRPC front (`serving.grpc_front`),
the Feast online feature source, the Bento build and the ``longtail serve`` commands, all thin
wrappers over the online core in `longtail.online`."""
