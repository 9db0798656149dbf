"""How stages and the front end talk: protocol value objects, proto conversions, gRPC links, the data channel,
the shared HTTP side."""
