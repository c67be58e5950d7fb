"""The webhook intake: authenticate, keep the bytes, answer 2xx only once Kafka has them."""
