// Key Vault (RBAC authorization, no access policies) holding the gateway's client keys and any backend
// API keys. The app reads them as Key Vault references with its user-assigned identity (Key Vault Secrets User,
// granted in rbac.bicep); the values never appear in app settings, outputs or deployment history.

@description('Name of the vault (3-24 characters, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Comma-separated gateway keys clients present (stored as the secret named by apiKeysSecretName).')
@secure()
param gatewayApiKeys string

@description('Name of the secret holding the gateway keys.')
param apiKeysSecretName string = 'gateway-api-keys'

@description('Backend API keys by backend name ({"weu": "<key>"}); each becomes the secret backend-<name>.')
@secure()
param backendKeys object = {}

@description('Days a deleted vault or secret can be recovered (7-90).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 7

@description('Purge protection: deleted secrets cannot be purged before the retention ends. Cannot be turned off again.')
param enablePurgeProtection bool = false

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The API rejects an explicit false; null leaves it off.
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource apiKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: apiKeysSecretName
  properties: {
    value: gatewayApiKeys
    contentType: 'comma-separated gateway client keys'
  }
}

resource backendKeySecrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for entry in items(backendKeys): {
  parent: vault
  name: 'backend-${entry.key}'
  properties: {
    value: entry.value
    contentType: 'Azure OpenAI api-key'
  }
}]

@description('Name of the vault.')
output name string = vault.name

@description('Vault URI, e.g. https://<name>.vault.azure.net/.')
output uri string = vault.properties.vaultUri

@description('Versionless URI of the gateway keys secret, for the GATEWAY_API_KEYS Key Vault reference.')
output apiKeysSecretUri string = apiKeysSecret.properties.secretUri
