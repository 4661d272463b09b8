"""Target devices: their profiles (``profiles``), the roofline latency model (``roofline``), timing on
this host (``timing``) and measured lookup tables (``lut``). Below ``cost`` and ``evaluate``: the
search objective's latency axis and the selector's menus both read latency from here."""
