"""cfn's side of Cloudflare's account API: connect, rotate, delivery health, reconcile."""
