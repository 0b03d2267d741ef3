package postgres

// FixRequestID makes every request of s carry id, as the attempts of one
// request do: a request made again is taken for a retry of the last one.
func (s *Store) FixRequestID(id string) { s.fixedRequestID = id }
