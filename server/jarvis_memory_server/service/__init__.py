"""Service rules: validation, normalisation, transactions. No gRPC or protobuf types here."""
