"""The front end: a transport-free coordinator plus KServe v2 gRPC and OpenAI HTTP adapters."""
