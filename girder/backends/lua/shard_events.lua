-- shard_events(event1, event2, ...): publish the events the caller of the sharded layout's steps
-- made of what its records' steps did after its last step in the grid's slot (see given_events).

given_events(1)
emit_events()
return 1
