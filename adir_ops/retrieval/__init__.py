"""Which K corpus images adapt the prior (paper Sec. 3.2, Table 5): the retrieval arms and the image encoders that embed for them."""
