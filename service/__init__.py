"""What the product does: plain arguments in, models out; never imports Flask."""
