import Gatehouse.Config
state("/var/lib/gatehouse/state.etf")
http(port: 18080)
service(:shop) do
  host("shop.example.org")
  target(:main, "http://127.0.0.1:4100", active: true)
  balance(:round_robin, [])
  health("/healthz", timeout: 5000)
  drain(30000)
end
