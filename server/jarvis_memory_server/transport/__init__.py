"""gRPC servicers: request validation, calls into the service layer, error mapping. No SQL."""
