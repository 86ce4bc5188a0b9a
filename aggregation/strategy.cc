// TODO(skeleton): being written in this session.
