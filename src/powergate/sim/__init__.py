"""Virtual prepaid meters and fleets that speak the real protocols."""
