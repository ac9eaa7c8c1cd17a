"""boto3 code for the one EC2 host: `requests` (pure builders), `ec2` (launch/find/destroy),
`images`, `keys`, `publicip`, `session` (clients), `errors` (CloudError and its sentences).
"""
