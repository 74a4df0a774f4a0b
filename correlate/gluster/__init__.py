"""GlusterFS RPC programs: procedure tables and argument/result layouts, one module each."""
