"""The words of the upload protocol: what a receiver answers for each message
it was sent. The store answers ``stored`` or ``duplicate``; the receiver
answers ``rejected`` for a message it refused; the sender settles each
message by them. One home, so both sides spell them alike."""

STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"
